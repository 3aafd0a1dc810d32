"""Barlow (Singla et al.): failure explanations from robust features with mutual-information
feature selection and shallow decision trees. See docs/barlow.md."""
