"""What users see: report tables, Perfetto traces, plots, mesh maps and compiler dumps."""
