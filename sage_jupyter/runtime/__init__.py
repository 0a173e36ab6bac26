"""How pipelines run: plan, dispatcher, job model, thread and Ray backends."""
