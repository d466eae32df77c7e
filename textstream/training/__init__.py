"""The training stage: the loop that turns token files into checkpoints, and what it is made of.

``loop`` is ``train()`` (validation, samples, checkpoints, exact resume,
stop agreement across workers); ``update`` the optimizer and the compiled
training update; ``schedule`` the learning rate and the run's length;
``distribute`` the ``tf.distribute`` strategies; ``checkpoints`` saving the
"last" and "best" series and where a resume starts; ``setup`` what a run needs
before its first step (the token files, the precision, the model its
budget buys); ``runstart`` undoing a start that failed; ``evaluation``
held-out nats per character; ``events`` what a run reports and
``metricslog`` where it is recorded. It sits above the generation stage, whose ``Generator``
prints the samples after each epoch.
"""
