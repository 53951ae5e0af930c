//! twill CNI plugin library.
