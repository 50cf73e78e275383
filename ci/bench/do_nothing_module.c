/* An Envoy dynamic module that does nothing: each HTTP filter hook returns at once
 * (continue), and the two constructors hand back a token. `ci/bench/http.py` runs Envoy
 * with it as the only filter, beside bare Envoy: what Envoy's dynamic-module machinery costs
 * a request before any module does any work (the floor under Envoy + inwasm's rows).
 * Hooks are defined without their parameters, which the x86-64 and AArch64 C calling
 * conventions let a callee ignore. */
#include <stdint.h>

static int token;

const char *envoy_dynamic_module_on_program_init(void) { return "v0.2.0"; }
const void *envoy_dynamic_module_on_http_filter_config_new(void) { return &token; }
const void *envoy_dynamic_module_on_http_filter_new(void) { return &token; }

#define HOOK(name) \
    uint32_t envoy_dynamic_module_on_http_filter_##name(void) { return 0; }

HOOK(config_destroy)
HOOK(config_scheduled)
HOOK(config_http_callout_done)
HOOK(config_http_stream_headers)
HOOK(config_http_stream_data)
HOOK(config_http_stream_trailers)
HOOK(config_http_stream_complete)
HOOK(config_http_stream_reset)
HOOK(destroy)
HOOK(request_headers)
HOOK(request_body)
HOOK(request_trailers)
HOOK(response_headers)
HOOK(response_body)
HOOK(response_trailers)
HOOK(stream_complete)
HOOK(scheduled)
HOOK(http_callout_done)
HOOK(http_stream_headers)
HOOK(http_stream_data)
HOOK(http_stream_trailers)
HOOK(http_stream_complete)
HOOK(http_stream_reset)
HOOK(downstream_above_write_buffer_high_watermark)
HOOK(downstream_below_write_buffer_low_watermark)
