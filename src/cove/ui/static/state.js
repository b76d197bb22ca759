// What a container is doing: its process's state, or the way it is going
// when the desired state (stored at once) and the process differ.
export function stateOf(c) {
  const status = (c.state && c.state.status) || "unknown";
  if (c.desired === "stopped" && (status === "running" || status === "restarting")) return "stopping";
  if (c.desired === "running" && (status === "exited" || status === "created")) return "starting";
  return status;
}
