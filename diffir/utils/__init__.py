from .padding import crop_to, pad_to_multiple

__all__ = ["crop_to", "pad_to_multiple"]
