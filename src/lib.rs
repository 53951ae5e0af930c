//! twill node agent library.
