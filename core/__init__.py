"""vae-zoo core: the VAE, its objectives, data, training loop and serialisation. Imports neither Ray nor MLflow."""
