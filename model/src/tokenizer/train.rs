//! BPE training (placeholder).
