//! netns harness.
