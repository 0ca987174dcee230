"""ModelDeck console: a Streamlit control plane that talks to the Service API over REST only."""
