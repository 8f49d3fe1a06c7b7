//! Rebuild when a migration changes: `sqlx::migrate!` embeds `migrations/` into the binary at compile time.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
