-- The users on a presence channel with their connections, and the info of those who have
-- some, read together so that a member list never pairs a user with a previous visit's info.
-- KEYS[1] the channel's users (hash: user -> connections), KEYS[2] their info (hash: user ->
-- JSON text), as presence_channel_set.lua writes them. Answers {users, info}, each a flat
-- list of field, value.

return {redis.call('HGETALL', KEYS[1]), redis.call('HGETALL', KEYS[2])}
