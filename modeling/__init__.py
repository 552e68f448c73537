"""The ADPretrain model, Hub-style: config, model, backbone adapters, projector, matcher, processor."""
