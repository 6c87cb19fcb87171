"""Model cards: what a model is, what it was trained and evaluated on, how to use it and its limits.

``unet.cards.model`` writes a trained model's card, ``unet.cards.ensemble`` the cross-validation's fold
ensemble's. A package of its own, below export and the stages: the register stage writes a card with its
exports, the cv stage one for its ensemble, and neither needs the other's code.
"""
