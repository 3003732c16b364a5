"""Training-time teachers: distillation terms added to the student's loss (never exported)."""
