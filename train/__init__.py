"""train: LPCE pre-training and fine-tuning of timm models on fracgen datasets."""
