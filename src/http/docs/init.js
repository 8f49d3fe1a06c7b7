// Starts Swagger UI on the service's own OpenAPI document. "Authorize" takes a bearer token (service or ticket
// token); the console's token, if this tab signed in there, is offered so "Try it out" works at once.
window.addEventListener("load", () => {
  const ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
    layout: "StandaloneLayout",
  });
  const token = sessionStorage.getItem("console.token");
  if (token) {
    ui.preauthorizeApiKey("bearer", token);
  }
  window.ui = ui;
});
