"""Feature preprocessing shared by the towers: vocabularies and the item-text encoder.

`vocab` (id vocabularies built from train, saved as text files) is light and exported here.
The text encoder pulls in keras-hub, so import it explicitly from
`recommenders_tf.features.text_encoder` where it is needed.
"""
from recommenders_tf.features.vocab import (Vocabulary, build_vocabularies, load_vocabularies,
                                             save_vocabularies)

__all__ = ["Vocabulary", "build_vocabularies", "load_vocabularies", "save_vocabularies"]
