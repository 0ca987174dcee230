"""``modeldeck compose smoke``: build the images, bring the compose stack up, check it end to end, take it down."""
