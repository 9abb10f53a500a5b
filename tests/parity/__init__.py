"""Cross-backend parity tests: NumPy reference vs MLX vs torch vs Hugging Face transformers."""
