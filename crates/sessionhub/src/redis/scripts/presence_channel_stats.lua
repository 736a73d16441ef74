-- How many users and connections a presence channel has, in one round trip.
-- KEYS[1] the channel's users (hash), KEYS[2] its connection total (string), as
-- presence_channel_set.lua writes them. Answers {users, connections}.

return {redis.call('HLEN', KEYS[1]), tonumber(redis.call('GET', KEYS[2]) or '0')}
