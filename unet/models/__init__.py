"""The networks, their checkpoints, and the rule that turns logits into probabilities."""
