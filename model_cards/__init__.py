"""Model card templates (base, classifier, instruct); installed as `scratch_gpt.model_cards`."""
