/* Placeholder: being written. */
typedef int mca_placeholder_attention;
