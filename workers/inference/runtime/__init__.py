"""InternVL runtime. Modules here that the API imports (tiling, templates, prompts, grounding,
checkpoint) stay free of torch; only ``model`` imports it."""
