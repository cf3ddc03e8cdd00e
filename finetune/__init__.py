"""Everything that runs at training and inference time: models, Lightning modules, generation, export, CLI."""
