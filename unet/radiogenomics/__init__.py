"""Radiogenomics of the LGG set (Buda, Saha & Mazurowski 2019): tumour shape against genomic clusters.

``features``: BEVR, margin fluctuation and angular standard deviation of one patient's mask;
``clinical``: the cluster columns of the Kaggle ``data.csv``; ``stats``: Fisher's exact test of
feature quartile x cluster, Bonferroni, and per-cluster AUCs; ``stage``: the study the stage runs.
"""
