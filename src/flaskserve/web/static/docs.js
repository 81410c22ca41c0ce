// /docs: Swagger UI (static/vendor/swagger-ui, pinned in its README) on this server's
// /openapi.json. A key given on a playground page in this tab is filled into "Authorize".
"use strict";

(function () {
  const key = window.flaskserve.apiKey.get();
  const ui = window.SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    presets: [window.SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    deepLinking: true,
    // The validator badge would send the document to validator.swagger.io.
    validatorUrl: null,
    docExpansion: "list",
    defaultModelsExpandDepth: 0,
    displayRequestDuration: true,
    // Keys stay in this page's memory, not in localStorage.
    persistAuthorization: false,
    onComplete: () => {
      if (key) ui.preauthorizeApiKey("bearer", key);
    },
  });
  window.ui = ui;
})();
