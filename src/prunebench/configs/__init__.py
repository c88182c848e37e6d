"""Built-in MMDetection config templates (plain MMEngine config files)."""
