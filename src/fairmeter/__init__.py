"""fairmeter: an LLM gateway that makes AI API spend exact, capped and explainable."""
