"""A thin Trio client for Redis: a sans-IO RESP2 codec (``resp``) and one connection (``client``).

Why our own: redis-py's async client is asyncio-only and no maintained Redis client runs under Trio;
sori needs a handful of commands (EVALSHA/EVAL, ZREM, PING), so a small RESP codec is less risk
than an asyncio bridge.
"""

from engine.redis.client import RedisClient, RedisUnavailable, Script, parse_redis_url
from engine.redis.resp import RedisError, RespParser, RespProtocolError, encode_command

__all__ = ["RedisClient", "RedisError", "RedisUnavailable", "RespParser", "RespProtocolError", "Script", "encode_command",
           "parse_redis_url"]
