"""compare and report: strategies side by side on one budget, their forgetting, the report and verdict."""
