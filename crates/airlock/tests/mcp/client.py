"""Drives airlock's MCP server with the official MCP Python SDK (`mcp` on PyPI), for it::mcp.

usage: client.py stdio|http SCENARIO_JSON
  stdio: launches `$AIRLOCK_BIN mcp` (cwd $AIRLOCK_MCP_ROOT) with AIRLOCK_URL/AIRLOCK_TOKEN
  http:  connects to $AIRLOCK_URL/mcp with the token as a bearer credential
SCENARIO_JSON: [{"tool": NAME, "args": {...}}, ...]; every call is made in one session.
Prints one JSON object: the negotiated protocol version, the server name, the tools as listed
(name, annotations, schemas) and, per call, isError, structuredContent and the text content, or
the protocol error's code and message. The SDK validates structuredContent against outputSchema.
"""

import asyncio
import json
import os
import sys

import httpx2
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError


async def main(mode: str, scenario: list) -> dict:
    url, token = os.environ["AIRLOCK_URL"], os.environ["AIRLOCK_TOKEN"]
    if mode == "stdio":
        env = {"AIRLOCK_URL": url, "AIRLOCK_TOKEN": token, "CHECKPOINT_DISABLE": "1",
               "TF_CLI_CONFIG_FILE": "/dev/null", "PATH": os.environ["PATH"]}
        # The test names what else `airlock mcp` gets (e.g. the local test cloud's settings).
        for name in filter(None, os.environ.get("AIRLOCK_MCP_PASS_ENV", "").split(",")):
            env[name] = os.environ[name]
        server = StdioServerParameters(
            command=os.environ["AIRLOCK_BIN"],
            args=["mcp"],
            env=env,
            cwd=os.environ.get("AIRLOCK_MCP_ROOT"),
        )
    else:
        http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
        server = streamable_http_client(url.rstrip("/") + "/mcp", http_client=http)
    out = {"calls": []}
    async with Client(server, read_timeout_seconds=600) as client:
        out["protocol_version"] = client.protocol_version
        out["server_name"] = client.server_info.name if client.server_info else None
        out["instructions"] = client.instructions
        listed = await client.list_tools()
        out["tools"] = [t.model_dump(by_alias=True, exclude_none=True) for t in listed.tools]
        await client.send_ping()
        for step in scenario:
            try:
                r = await client.call_tool(step["tool"], step.get("args", {}))
                out["calls"].append({
                    "isError": bool(r.is_error),
                    "structured": r.structured_content,
                    "text": "".join(c.text for c in r.content if getattr(c, "type", "") == "text"),
                })
            except MCPError as e:
                out["calls"].append({"protocolError": {"code": e.code, "message": str(e)}})
    return out


if __name__ == "__main__":
    result = asyncio.run(main(sys.argv[1], json.loads(sys.argv[2])))
    print(json.dumps(result))
