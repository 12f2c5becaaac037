"""Training beyond one machine (DMT, REFERENCES.md section 3). So far: the tower partitioner;
the TorchRec training, SPTT and tower modules are issue 14's remaining parts."""
