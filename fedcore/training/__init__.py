"""Local training and evaluation of one model, and what they cost in memory."""
