"""The project's own environments, registered with gymnasium on import."""
