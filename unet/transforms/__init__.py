"""Paired image, mask and weight-map warps: elastic deformation and the batched online augmentation."""
