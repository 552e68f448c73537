"""Cross-cutting tests: rules and suites that span several modules, named after what they check."""
