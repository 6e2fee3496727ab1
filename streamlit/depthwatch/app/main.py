"""Placeholder: the pages land in the next commits."""

import streamlit as st


def main() -> None:
    st.title("depthwatch")
