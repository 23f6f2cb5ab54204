"""Context-only variants, class activation maps, and the evaluation run (no detectron2)."""
