// SPDX-License-Identifier: GPL-2.0
/* Not a probe: compiled only so that the Rust side gets the types every
 * probe shares (the record header) from a generated skeleton, rather than
 * from a hand-written copy. */
#include "common.h"

const volatile struct event_header header_type = {};

char LICENSE[] SEC("license") = "GPL";
