"""Settings: the typed params.yaml schema (params) and its one loader with environment endpoints (config)."""
