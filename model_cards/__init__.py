"""Model card templates (base, classifier, instruct, dpo); installed as `scratch_gpt.model_cards`."""
