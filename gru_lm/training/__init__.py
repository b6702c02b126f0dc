"""Training a model: the settings, the loop, its schedule, run folder and state, resume, the start from another
model, fitting the model to the machine, the processes of a job, and comparing configs."""
