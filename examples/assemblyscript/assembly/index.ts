// A proxy-wasm filter written in AssemblyScript with @solo-io/proxy-runtime: every
// response gets `x-powered-by: inwasm-assemblyscript` and `x-greeting: <greeting>`, and
// requests for GET /hello are answered by the filter itself with `<greeting>, <path>!`.
// The plugin configuration is the greeting; an empty one is refused (nginx -t fails).
export * from "@solo-io/proxy-runtime/proxy";
import {
  RootContext,
  Context,
  registerRootContext,
  FilterHeadersStatusValues,
  GrpcStatusValues,
  HeaderPair,
  LogLevelValues,
  log,
  send_local_response,
  stream_context,
} from "@solo-io/proxy-runtime";
import { BufferTypeValues, get_buffer_bytes } from "@solo-io/proxy-runtime/runtime";

class GreeterRoot extends RootContext {
  greeting: string = "";

  // Reads the configuration itself: RootContext.onConfigure of proxy-runtime 0.1.8 passes
  // the configuration's size where the host expects a pointer for the returned size, so
  // getConfiguration() stays empty (and the host writes 4 bytes at that address).
  onConfigure(configuration_size: u32): bool {
    const configuration = get_buffer_bytes(BufferTypeValues.PluginConfiguration, 0, configuration_size);
    this.greeting = String.UTF8.decode(configuration).trim();
    if (this.greeting == "") {
      log(LogLevelValues.error, "bad configuration: the plugin configuration must be a greeting");
      return false;
    }
    log(LogLevelValues.info, "greeting is \"" + this.greeting + "\"");
    return true;
  }

  createContext(context_id: u32): Context {
    return new Greeter(context_id, this);
  }
}

class Greeter extends Context {
  greeting: string;

  constructor(context_id: u32, root: GreeterRoot) {
    super(context_id, root);
    this.greeting = root.greeting;
  }

  onRequestHeaders(headers: u32, end_of_stream: bool): FilterHeadersStatusValues {
    const path = stream_context.headers.request.get(":path");
    if (stream_context.headers.request.get(":method") == "GET" && path.split("?")[0] == "/hello") {
      const headers: HeaderPair[] = [
        new HeaderPair(String.UTF8.encode("content-type"), String.UTF8.encode("text/plain")),
      ];
      const body = String.UTF8.encode(this.greeting + ", " + path + "!\n");
      send_local_response(200, "assemblyscript greeter", body, headers, GrpcStatusValues.InvalidCode);
      return FilterHeadersStatusValues.StopIteration;
    }
    return FilterHeadersStatusValues.Continue;
  }

  onResponseHeaders(headers: u32, end_of_stream: bool): FilterHeadersStatusValues {
    stream_context.headers.response.add("x-powered-by", "inwasm-assemblyscript");
    stream_context.headers.response.add("x-greeting", this.greeting);
    return FilterHeadersStatusValues.Continue;
  }
}

registerRootContext((context_id: u32): RootContext => new GreeterRoot(context_id), "greeter");
