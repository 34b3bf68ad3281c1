"""The asset tree (region → feeder → transformer → meter/sensor) and the service points that
tie customers to it: who an incident on any asset affects, and who a statement's meter serves."""
