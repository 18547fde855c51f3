"""VSD distillation: losses (pure functions), EMA and the LightningModule."""
