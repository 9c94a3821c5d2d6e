"""The operator dashboard served by the API at `/ui` (see `ui.routes`)."""
