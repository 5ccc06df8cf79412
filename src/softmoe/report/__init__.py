"""The report: the build step (build), its document model and renderers (render, templates/),
what every section reads (context) and the sections (summary, experiments, audit), and the
figures step (figures)."""
