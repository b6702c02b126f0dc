"""Measuring and showing trained models: loss, perplexity and bits per character, what the gates do (`inspect`),
statistics over seeds, reports and loss plots of finished runs. Never imports the training loop."""
