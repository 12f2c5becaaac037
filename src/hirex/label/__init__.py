"""LLM relevance labelling (Thomas et al., arXiv 2309.10621): prompts built from switchable
parts, OpenAI-compatible and local llama.cpp backends, a durable SQLite cache, and agreement
statistics against human labels."""
